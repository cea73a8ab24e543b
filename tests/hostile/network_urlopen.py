# expect: exception
def solution():
    import urllib.request
    return urllib.request.urlopen("http://example.com", timeout=2).read().decode()
