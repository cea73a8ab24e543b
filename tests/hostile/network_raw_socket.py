# expect: exception
def solution():
    import socket
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.sendto(b"x", ("8.8.8.8", 53))
    return 1
