"""``replay ui``: the incident console, a local read-only web page over the event log.

The console has no mesh logic and no fold of its own: the mesh, a node and a
diff at the cursors are the documents ``replay at / at --node --full / diff``
print (``replay.engine`` + ``replay.report``); the timeline is an index of
which event kinds happened when (``replay.ui.timeline``), never of state.
"""
