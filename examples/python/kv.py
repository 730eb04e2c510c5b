"""openYuanrong's KV examples: the docstring examples of yr.kv_write, kv_read, kv_get, kv_del and
kv_set (its API reference has no other Python KV code), run one after the other as one script.
The `>>>` lines are kept as they are; the print() calls are added to show what each one did."""

import yr
yr.init()

# yr.kv_write
yr.kv_write("kv-key", b"value1", yr.ExistenceOpt.NONE, yr.WriteMode.NONE_L2_CACHE, 0, yr.CacheType.MEMORY)

# yr.kv_read
v1 = yr.kv_read("kv-key")
print("kv_read:", bytes(v1))

# yr.kv_get
v1 = yr.kv_get("kv-key")
print("kv_get:", bytes(v1))

# yr.kv_del
yr.kv_write("kv-key", b"value1", yr.ExistenceOpt.NONE, yr.WriteMode.NONE_L2_CACHE, 0) # doctest: +SKIP
yr.kv_del("kv-key")
try:
    yr.kv_read("kv-key", 0)
except RuntimeError as e:
    print("after kv_del, kv_read raises:", type(e).__name__)

# yr.kv_set
# The worker startup parameters need to be configured with shared_disk_directory and shared_disk_size_mb;
# otherwise, this example will result in an error
set_param = yr.SetParam()
set_param.existence = yr.ExistenceOpt.NX
set_param.write_mode = yr.WriteMode.NONE_L2_CACHE_EVICT
set_param.ttl_second = 10
set_param.cache_type = yr.CacheType.DISK
yr.kv_set("kv-key", b"value1", set_param)
print("kv_set (NX):", bytes(yr.kv_read("kv-key")))
try:
    yr.kv_set("kv-key", b"value2", set_param)
except RuntimeError as e:
    print("kv_set (NX) of an existing key raises:", type(e).__name__)
yr.kv_del("kv-key")

yr.finalize()
