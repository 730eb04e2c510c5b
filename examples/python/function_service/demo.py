import datetime

# Function execution entry, executed on each request, where event parameter is in JSON format
def handler(event, context):
    print("received request,event content:", event)

    response = ""
    try:
        name = event.get("name")
        # Get configured environment variables, set during function registration and update
        show_date = context.getUserData("show_date")
        if show_date is not None:
            response = "hello " + name + ",today is " + datetime.date.today().strftime('%Y-%m-%d')
        else:
            response = "hello " + name
    except Exception as e:
        print(e)
        response = "please enter your name,for example:{'name':'yuanrong'}"

    return response

# Function initialization entry, executed once when function instance starts
def init(context):
    print("function instance initialization completed")

# Function exit entry, executed once when function instance is destroyed
def pre_stop():
    print("function instance is being destroyed")
