# expect: exception
# Process creation through multiprocessing.
def solution():
    import multiprocessing
    p = multiprocessing.Process(target=print)
    p.start()
    p.join()
    return 1
