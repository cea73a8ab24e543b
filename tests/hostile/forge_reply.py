# expect: crashed
# Writes fake protocol frames into every inherited fd (one is the channel to the caller): the
# caller rejects the malformed reply and retires the worker.
def solution():
    import os
    import struct
    for fd in range(3, 64):
        try:
            os.write(fd, struct.pack(">I", 17) + b'{"answer": 42.0}')
        except OSError:
            pass
    return 1
