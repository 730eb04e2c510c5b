import yr

# Define stateless function
@yr.invoke
def say_hello(name):
    return 'hello, ' + name


# Init only once
yr.init()

# Asynchronously invoke stateless functions in parallel
results_ref = [say_hello.invoke('yuanrong') for i in range(3)]
print(yr.get(results_ref))

# Release environmental resources
yr.finalize()
