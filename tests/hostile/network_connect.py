# expect: exception
def solution():
    import socket
    connection = socket.create_connection(("127.0.0.1", 22), timeout=1)
    connection.close()
    return 1
