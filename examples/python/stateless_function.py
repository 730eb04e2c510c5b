import yr
# Initialize openYuanrong runtime environment
yr.init()

# Declare add function can be executed remotely
@yr.invoke
def add(n):
    return n + 1

# Asynchronously (non-blocking) execute add function remotely, result is a reference to the return value
result = add.invoke(1)
# Synchronously (blocking) get actual return value through yr.get() method, will output 2
# You can also use yr.wait() method, which only waits for call completion without directly getting results
print(yr.get(result))

# Release openYuanrong environment resources
yr.finalize()
