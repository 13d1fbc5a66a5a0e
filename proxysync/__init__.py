"""What each proxy accepted, and when: the ``meshlog.sync`` topic read back.

Gateways append their streams' facts (``events.types.ProxyStreamOpened``,
``ProxyStreamClosed``, ``ProxyAcked``, ``ProxyNacked``); ``proxysync.table``
folds them into one row per proxy, ``proxysync.compare`` holds a proxy's ACKed
versions against the versions its view names (the one place that matching
lives: ``meshlog status`` and ``replay`` both call it).
"""
