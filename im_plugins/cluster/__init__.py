"""The cluster: nodes that share a broker behave as one service (docs/cluster.md).

- ``options``   the options every cluster broker reads;
- ``wire``      the messages nodes send each other, typed and versioned, and their encoding;
- ``peer``      what a node does with a message from another node (one handler per kind);
- ``health``    reachability of the broker: outage detection, bounded calls;
- ``outcomes``  ack outcomes carried to the node that allocated their sid, batched;
- ``base``      the machinery both brokers share: routing, unacked hand-over, the
                recovery loop;
- ``redis/``, ``nats/``  the two brokers (the plugins ``redis_broker``, ``nats_broker``).
"""
