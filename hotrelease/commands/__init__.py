"""The command line's rooms: each module parses options, calls the core and formats the answer
(`render` holds the progress display and the tables). The top layer: may import every room,
and nothing but `cli` imports it.
"""
