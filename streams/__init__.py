"""The JetStream layer: subjects, configs, schemas, codec, event store and embedded broker."""
