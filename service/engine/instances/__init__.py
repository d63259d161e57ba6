"""Objects, one by one: instance decoding of the mask in the same pass, exact across tiles, strips and shards."""
