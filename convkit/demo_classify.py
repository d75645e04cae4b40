"""placeholder while being written."""


def add_arguments(p):
    pass


def run(args):
    raise NotImplementedError
