# expect: exception
# Plants a module in the interpreter's site-packages (code the trainer would import): read-only there.
def solution():
    with open("__SITE_PACKAGES__/reft_hostile_probe.py", "w") as handle:
        handle.write("import os\n")
    return 1
