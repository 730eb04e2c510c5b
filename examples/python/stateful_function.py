import yr

# Declare stateful function
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
    # Initialize openYuanrong runtime environment
    yr.init()

    # Create stateful function instance
    counter = Counter.invoke()

    # Asynchronously (non-blocking) call stateful function methods to interact with it
    result_add = counter.add.invoke(3)
    result_get = counter.get.invoke()

    # Synchronously (blocking) get results, output 3 3
    # You can also use yr.wait() method, which only waits for call completion without directly getting results
    print(yr.get(result_add), yr.get(result_get))

    # Destroy function instance
    counter.terminate()
    # Release openYuanrong environment resources
    yr.finalize()
