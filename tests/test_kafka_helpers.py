"""helpers.kafka against the real cluster."""
import time

from helpers import config, kafka


def test_partition_count_does_not_create_the_topic_it_asks_about(clusters):
    name = config.unique_name("absent")
    assert kafka.partition_count(name) == 0
    time.sleep(1)  # an auto-creation would show up by now
    assert name not in kafka.admin().list_topics(timeout=10).topics
