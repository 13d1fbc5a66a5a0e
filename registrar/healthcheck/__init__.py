"""``registrar healthcheck``: central ("master-mode") health checking.

Peer-to-peer health checks make traffic storms; instead a few checker
processes share the instances between them and append only *transitions* to
the health topic, which every consumer of the log (projector, replay) folds.

Modules, one job each:

- ``hysteresis``: pure per-instance counters and the logged status; decides
  when a transition is due (sans-I/O, no clock).
- ``shards``: which shard an instance belongs to (a stable hash), and the
  jittered probe schedule (pure).
- ``probe``: one bounded HTTP GET or TCP connect (asyncio).
- ``checker``: the process: group membership on the shard topic, a full
  read of the registrations and health topics folded with the projector's
  own ``projector.fold.fold``, the per-instance probe loops, appends through
  ``events.producer.EventProducer``, and the status file.
"""
