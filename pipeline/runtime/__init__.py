"""The distributors, where Ray runs the work: the elastic actor pool (actor_pool.py, driven by
ray_runner.py) or this process (local_runner.py) run pipeline/invert's shard processors; ray_address.py and
ray_init.py choose and join the Ray; ray_train.py is the training jobs' Ray Train adapter. Elsewhere Ray
is only read from: Store.to_ray_dataset, and the node id a shard records."""
