# expect: memory
# Grows by 16 MB steps until the address-space limit is hit.
def solution():
    chunks = []
    while True:
        chunks.append(bytearray(16 * 1024 * 1024))
