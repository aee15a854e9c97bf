"""A plugin that tries to take a built-in name."""

import normzoo


@normzoo.register("gn")
class Thief(normzoo.Norm):
    pass
