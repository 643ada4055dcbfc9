"""Reads every record of a topic with confluent-kafka (its own librdkafka, no Keel
code) and prints one JSON object per record: partition, offset, key, headers, value.

    python3 read_topic.py BROKERS TOPIC
"""
import json
import sys

from confluent_kafka import Consumer, KafkaError, TopicPartition

brokers, topic = sys.argv[1], sys.argv[2]
consumer = Consumer({
    "bootstrap.servers": brokers,
    "group.id": "interop-reader",
    "enable.auto.commit": False,
    "enable.partition.eof": True,
})
metadata = consumer.list_topics(topic, timeout=10)
partitions = list(metadata.topics[topic].partitions)
consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
open_partitions = set(partitions)
while open_partitions:
    message = consumer.poll(30)
    if message is None:
        sys.exit("timed out reading " + topic)
    if message.error():
        if message.error().code() == KafkaError._PARTITION_EOF:
            open_partitions.discard(message.partition())
            continue
        sys.exit(str(message.error()))
    print(json.dumps({
        "partition": message.partition(),
        "offset": message.offset(),
        "key": None if message.key() is None else message.key().decode("utf-8"),
        "headers": {k: (v or b"").decode("utf-8") for k, v in (message.headers() or [])},
        "value": (message.value() or b"").decode("utf-8"),
    }))
consumer.close()
