import yr

@yr.instance
class Counter:
    def __init__(self):
        self.count = 0

    def add(self, n):
        self.count += n
        return self.count

    def get(self):
        return self.count

if __name__ == "__main__":
    yr.init()

    # Create named function instance, name is counter-1, namespace is demo
    opt = yr.InvokeOptions()
    opt.name = "counter-1"
    opt.ns = "demo"
    counter = Counter.options(opt).invoke()
    result_add = counter.add.invoke(3)
    print(yr.get(result_add))

    # You can use the named function instance in other applications, this will not create a new function instance, will use the one created above
    counter_exist = Counter.options(opt).invoke()
    result_get = counter_exist.get.invoke()
    # Get the state written by calling the add method earlier, output 3
    print(yr.get(result_get))

    # You can also use yr.get_instance to get an already created function instance
    counter_query = yr.get_instance("counter-1")
    result_recheck = counter_exist.get.invoke()
    # Get the state written by calling the add method earlier, output 3
    print(yr.get(result_recheck))

    counter.terminate()
    yr.finalize()
