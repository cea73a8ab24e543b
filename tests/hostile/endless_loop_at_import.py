# expect: timeout
# Hangs while the module body runs, before solution() even exists.
while True:
    pass
