"""Writes one structured-mode CloudEvent (content-type application/cloudevents+json,
no ce_ headers) with confluent-kafka, as a producer that knows nothing of Keel would.

    python3 write_structured.py BROKERS TOPIC EVENT_JSON
"""
import sys

from confluent_kafka import Producer

brokers, topic, event = sys.argv[1], sys.argv[2], sys.argv[3]
producer = Producer({"bootstrap.servers": brokers, "acks": "all"})
failures = []
producer.produce(
    topic,
    value=event.encode("utf-8"),
    key=b"interop-key",
    headers=[("content-type", b"application/cloudevents+json; charset=utf-8")],
    on_delivery=lambda err, _msg: failures.append(err) if err else None,
)
producer.flush(30)
if failures:
    sys.exit("delivery failed: %s" % failures)
