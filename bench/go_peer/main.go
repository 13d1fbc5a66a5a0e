// Command go_peer is the go-control-plane peer of bench/xds_fanout.py: it serves the
// bench's mesh over delta (and state-of-the-world) ADS with go-control-plane v0.14 used
// as a library, the way a Go control plane would serve the same view records.
//
// How it serves them:
//   - EDS from one LinearCache holding every ClusterLoadAssignment: a change is
//     marshalled once (the cache's lazily marshalled resource, its version the hash of
//     those bytes) and wakes only the watches subscribed to that name.
//   - CDS, LDS and RDS from a SnapshotCache (ADS mode), one snapshot per node holding
//     the resources its membership names. Shared clusters are one message shared by
//     every snapshot that names them.
//
// The bench drives it over stdin/stdout, one JSON object per line each way:
//
//	{"cmd":"load","path":F}          read the feed file F (written by bench/xds_fanout_go.py)
//	{"cmd":"apply","index":K}        apply hot change K; answers when it was applied
//	{"cmd":"churn","seconds":S,"interval":I}  apply the churn batches, one every I seconds
//	{"cmd":"counters"}               responses and bytes sent, streams open
//	{"cmd":"gc"}                     Go GC cycles, CPU and longest pause since the last ask
//	{"cmd":"stop"}
//
// The first line it writes is {"port":N} once the gRPC server listens. Every message
// from the feed is decoded when it is loaded, so applying a change costs only the cache
// update and what go-control-plane does with it: the same split as the meshlog gateway
// in the bench, whose changes arrive as precomputed view records.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoregistry"

	// the resource types the feed carries, registered for lookup by type URL
	_ "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// ---------------------------------------------------------------- the feed file

// body is one view resource: its type URL, name and serialized message (Deleted: gone).
type body struct {
	Type    string `json:"type"`
	Name    string `json:"name"`
	Body    []byte `json:"body"`
	Deleted bool   `json:"deleted"`
}

// change is one batch of view records as the peer needs it: changed bodies, and the
// nodes whose snapshot types (CDS, LDS, RDS) must be rebuilt with their names now.
type change struct {
	Bodies   []body                         `json:"bodies"`
	Nodes    map[string]map[string][]string `json:"nodes"`
	Notified int                            `json:"notified"`
}

type feed struct {
	Bodies []body                         `json:"bodies"`
	Nodes  map[string]map[string][]string `json:"nodes"`
	Hot    []change                       `json:"hot"`
	Churn  []change                       `json:"churn"`
}

// ---------------------------------------------------------------- the peer

type key struct{ typ, name string }

// prepared is a change with every message decoded, ready to hand to the caches.
type prepared struct {
	edsUpdate map[string]types.Resource
	edsDelete []string
	others    map[key]types.Resource // nil value: deleted
	nodes     map[string]map[string][]string
	notified  int
}

type peer struct {
	eds     *cache.LinearCache
	snaps   cache.SnapshotCache
	bodies  map[key]types.Resource // current CDS/LDS/RDS bodies
	members map[string]map[string][]string
	version int
	hot     []prepared
	churn   []prepared

	responses, bytes, deltaStreams, sotwStreams atomic.Int64
	lastGC                                      gcMark
}

func decode(b body) (types.Resource, error) {
	mt, err := protoregistry.GlobalTypes.FindMessageByURL(b.Type)
	if err != nil {
		return nil, fmt.Errorf("resource %q: %w", b.Name, err)
	}
	m := mt.New().Interface()
	if err := proto.Unmarshal(b.Body, m); err != nil {
		return nil, fmt.Errorf("resource %q of %s: %w", b.Name, b.Type, err)
	}
	return m, nil
}

func prepare(c change) (prepared, error) {
	p := prepared{edsUpdate: map[string]types.Resource{}, others: map[key]types.Resource{}, nodes: c.Nodes,
		notified: c.Notified}
	for _, b := range c.Bodies {
		var m types.Resource
		if !b.Deleted {
			var err error
			if m, err = decode(b); err != nil {
				return p, err
			}
		}
		switch {
		case b.Type == resource.EndpointType && b.Deleted:
			p.edsDelete = append(p.edsDelete, b.Name)
		case b.Type == resource.EndpointType:
			p.edsUpdate[b.Name] = m
		default:
			p.others[key{b.Type, b.Name}] = m
		}
	}
	return p, nil
}

// snapshot builds the node's CDS/LDS/RDS snapshot from the names its membership gives.
func (p *peer) snapshot(node string) error {
	p.version++
	byType := map[resource.Type][]types.Resource{}
	for typ, names := range p.members[node] {
		list := make([]types.Resource, 0, len(names))
		for _, name := range names {
			if m, ok := p.bodies[key{typ, name}]; ok {
				list = append(list, m)
			}
		}
		byType[typ] = list
	}
	snap, err := cache.NewSnapshot(strconv.Itoa(p.version), byType)
	if err != nil {
		return fmt.Errorf("node %q: %w", node, err)
	}
	return p.snaps.SetSnapshot(context.Background(), node, snap)
}

func (p *peer) load(path string) (map[string]any, error) {
	t0 := time.Now()
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f feed
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	raw = nil
	initial, err := prepare(change{Bodies: f.Bodies})
	if err != nil {
		return nil, err
	}
	p.eds.SetResources(initial.edsUpdate)
	p.bodies = initial.others
	p.members = f.Nodes
	for node := range p.members {
		if err := p.snapshot(node); err != nil {
			return nil, err
		}
	}
	// the version each hot change gives its endpoints, as the LinearCache will hash them for delta
	// watches (deterministic marshal, sha256), so the bench can tell which change a client received
	hotVersions := make([]map[string]string, len(f.Hot))
	for i, c := range f.Hot {
		pc, err := prepare(c)
		if err != nil {
			return nil, err
		}
		p.hot = append(p.hot, pc)
		hotVersions[i] = map[string]string{}
		for name, m := range pc.edsUpdate {
			b, err := cache.MarshalResource(m)
			if err != nil {
				return nil, err
			}
			hotVersions[i][name] = cache.HashResource(b)
		}
	}
	for _, c := range f.Churn {
		pc, err := prepare(c)
		if err != nil {
			return nil, err
		}
		p.churn = append(p.churn, pc)
	}
	f = feed{}
	runtime.GC()
	p.gcSince() // the bench's first ask covers the streams opening, not the load
	return map[string]any{"loaded": time.Since(t0).Seconds(), "nodes": len(p.members), "hot_versions": hotVersions}, nil
}

// apply hands one change to the caches: endpoints to the LinearCache, then the snapshots of
// the nodes whose other types changed.
func (p *peer) apply(c prepared) error {
	if len(c.edsUpdate) > 0 || len(c.edsDelete) > 0 {
		if err := p.eds.UpdateResources(c.edsUpdate, c.edsDelete); err != nil {
			return err
		}
	}
	for k, m := range c.others {
		if m == nil {
			delete(p.bodies, k)
		} else {
			p.bodies[k] = m
		}
	}
	for node, names := range c.nodes {
		if names == nil {
			delete(p.members, node)
			p.snaps.ClearSnapshot(node)
			continue
		}
		p.members[node] = names
		if err := p.snapshot(node); err != nil {
			return err
		}
	}
	return nil
}

func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

func (p *peer) applyHot(k int) (map[string]any, error) {
	if k < 0 || k >= len(p.hot) {
		return nil, fmt.Errorf("no hot change %d (have %d)", k, len(p.hot))
	}
	c := p.hot[k]
	t := time.Now()
	if err := p.apply(c); err != nil {
		return nil, err
	}
	return map[string]any{"t_applied": unixSeconds(t), "apply_s": time.Since(t).Seconds(), "changed": c.notified}, nil
}

// runChurn applies the churn batches on a fixed schedule (as the bench's gateway does): one every
// interval, for at most seconds, never catching up by bunching.
func (p *peer) runChurn(seconds, interval float64) (map[string]any, error) {
	start := time.Now()
	next := start
	applied := 0
	applyS := 0.0
	for applied < len(p.churn) && time.Since(start).Seconds() < seconds {
		t := time.Now()
		if err := p.apply(p.churn[applied]); err != nil {
			return nil, err
		}
		applyS += time.Since(t).Seconds()
		applied++
		next = next.Add(time.Duration(interval * float64(time.Second)))
		time.Sleep(time.Until(next))
	}
	p.churn = p.churn[applied:]
	return map[string]any{"applied": applied, "apply_s": applyS, "took": time.Since(start).Seconds()}, nil
}

// ---------------------------------------------------------------- GC figures

type gcMark struct {
	cycles uint64
	cpuS   float64
}

var gcSamples = []metrics.Sample{
	{Name: "/gc/cycles/total:gc-cycles"},
	{Name: "/cpu/classes/gc/total:cpu-seconds"},
	{Name: "/cpu/classes/gc/mark/idle:cpu-seconds"},
}

// gcSince reports the GC cycles, their CPU and the longest stop-the-world pause since the last call.
// The CPU is the runtime's estimate, less the mark work its idle workers did on otherwise idle cores.
func (p *peer) gcSince() map[string]any {
	metrics.Read(gcSamples)
	now := gcMark{gcSamples[0].Value.Uint64(), gcSamples[1].Value.Float64() - gcSamples[2].Value.Float64()}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	longest := uint64(0)
	for i := uint64(0); i < min(uint64(ms.NumGC)-p.lastGC.cycles, 256); i++ {
		longest = max(longest, ms.PauseNs[(uint64(ms.NumGC)-1-i)%256])
	}
	out := map[string]any{"count": now.cycles - p.lastGC.cycles, "cpu_s": now.cpuS - p.lastGC.cpuS,
		"max_ms": float64(longest) / 1e6, "heap_mb": float64(ms.HeapAlloc) / (1 << 20)}
	p.lastGC = gcMark{uint64(ms.NumGC), now.cpuS}
	return out
}

// ---------------------------------------------------------------- main

func main() {
	port := flag.Int("port", 0, "TCP port on 127.0.0.1 (0: any free one)")
	flag.Parse()

	p := &peer{eds: cache.NewLinearCache(resource.EndpointType), snaps: cache.NewSnapshotCache(true, cache.IDHash{}, nil)}
	mux := &cache.MuxCache{
		Classify: func(r *cache.Request) string { return cacheFor(r.GetTypeUrl()) },
		ClassifyDelta: func(r *cache.DeltaRequest) string {
			return cacheFor(r.GetTypeUrl())
		},
		Caches: map[string]cache.Cache{"eds": p.eds, "snapshot": p.snaps},
	}
	callbacks := server.CallbackFuncs{
		DeltaStreamOpenFunc:   func(context.Context, int64, string) error { p.deltaStreams.Add(1); return nil },
		DeltaStreamClosedFunc: func(int64, *core.Node) { p.deltaStreams.Add(-1) },
		StreamOpenFunc:        func(context.Context, int64, string) error { p.sotwStreams.Add(1); return nil },
		StreamClosedFunc:      func(int64, *core.Node) { p.sotwStreams.Add(-1) },
		StreamDeltaResponseFunc: func(_ int64, _ *discoverygrpc.DeltaDiscoveryRequest, r *discoverygrpc.DeltaDiscoveryResponse) {
			p.responses.Add(1)
			p.bytes.Add(int64(proto.Size(r)))
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// the options `xds-gateway run` gives its server (bench GATEWAY_SERVER_OPTIONS): keepalive pings
	// every 30 s, no cap on streams per connection worth the name; and the clients' own pings
	// (every 60 s) allowed, where grpc-go's default policy would close their connections
	grpcServer := grpc.NewServer(
		grpc.MaxConcurrentStreams(100_000),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(grpcServer, server.NewServer(ctx, mux, callbacks))
	lis, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		fmt.Fprintln(os.Stderr, "go_peer:", err)
		os.Exit(1)
	}
	go func() {
		if err := grpcServer.Serve(lis); err != nil {
			fmt.Fprintln(os.Stderr, "go_peer: serve:", err)
		}
	}()

	out := json.NewEncoder(os.Stdout)
	reply := func(v map[string]any) {
		if err := out.Encode(v); err != nil {
			os.Exit(1) // the bench went away
		}
	}
	reply(map[string]any{"port": lis.Addr().(*net.TCPAddr).Port})

	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<16), 1<<20)
	for in.Scan() {
		var cmd struct {
			Cmd      string  `json:"cmd"`
			Path     string  `json:"path"`
			Index    int     `json:"index"`
			Seconds  float64 `json:"seconds"`
			Interval float64 `json:"interval"`
		}
		if err := json.Unmarshal(in.Bytes(), &cmd); err != nil {
			reply(map[string]any{"error": "bad command: " + err.Error()})
			continue
		}
		var res map[string]any
		switch cmd.Cmd {
		case "load":
			res, err = p.load(cmd.Path)
		case "apply":
			res, err = p.applyHot(cmd.Index)
		case "churn":
			res, err = p.runChurn(cmd.Seconds, cmd.Interval)
		case "counters":
			res = map[string]any{"responses": p.responses.Load(), "bytes": p.bytes.Load(),
				"streams": map[string]int64{"delta": p.deltaStreams.Load(), "sotw": p.sotwStreams.Load()}}
		case "gc":
			res = p.gcSince()
		case "stop":
			grpcServer.Stop()
			reply(map[string]any{"stopped": true})
			return
		default:
			err = fmt.Errorf("unknown command %q", cmd.Cmd)
		}
		if err != nil {
			reply(map[string]any{"error": err.Error()})
			err = nil
			continue
		}
		reply(res)
	}
	grpcServer.Stop()
}

// cacheFor routes a request to the cache serving its type: endpoints to the LinearCache,
// everything else to the per-node snapshots.
func cacheFor(typeURL string) string {
	if typeURL == resource.EndpointType {
		return "eds"
	}
	return "snapshot"
}
