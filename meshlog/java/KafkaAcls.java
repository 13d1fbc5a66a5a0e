// Applies meshlog's ACL table (events/kafka_acls.py) with Kafka's Java Admin API; aiokafka has no ACL calls.
// Run as a single source file: java -cp '<kafka libs>/*' KafkaAcls.java CLIENT.properties < bindings
// stdin: one ALLOW binding per line, tab separated: principal, resource type, pattern type, name, operation.
// Idempotent: creates only the bindings the broker does not hold yet; deletes nothing (extras are counted).
// Prints one line "created=N present=M extra=K" and exits 0; on failure prints the reason and exits 1.
import java.io.BufferedReader;
import java.io.FileInputStream;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclBindingFilter;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class KafkaAcls {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        try (FileInputStream in = new FileInputStream(args[0])) {
            props.load(in);
        }
        List<AclBinding> want = new ArrayList<>();
        BufferedReader reader = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        for (String line; (line = reader.readLine()) != null; ) {
            if (line.isBlank()) continue;
            String[] f = line.split("\t", -1);
            if (f.length != 5) {
                System.err.println("bad binding line (want 5 tab-separated fields): " + line);
                System.exit(1);
            }
            want.add(new AclBinding(
                new ResourcePattern(ResourceType.valueOf(f[1]), f[3], PatternType.valueOf(f[2])),
                new AccessControlEntry(f[0], "*", AclOperation.valueOf(f[4]), AclPermissionType.ALLOW)));
        }
        try (Admin admin = Admin.create(props)) {
            Set<AclBinding> have = new HashSet<>(admin.describeAcls(AclBindingFilter.ANY).values().get(60, TimeUnit.SECONDS));
            List<AclBinding> missing = new ArrayList<>();
            for (AclBinding b : want) if (!have.contains(b)) missing.add(b);
            if (!missing.isEmpty()) admin.createAcls(missing).all().get(60, TimeUnit.SECONDS);
            Set<AclBinding> wanted = new HashSet<>(want);
            long extra = have.stream().filter(b -> !wanted.contains(b)).count();
            System.out.println("created=" + missing.size() + " present=" + (want.size() - missing.size()) + " extra=" + extra);
        } catch (ExecutionException e) {
            System.err.println(e.getCause().getClass().getSimpleName() + ": " + e.getCause().getMessage());
            System.exit(1);
        }
    }
}
