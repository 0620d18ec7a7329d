"""The built-in demo model: a tiny Kandinsky 2.2 trained on pictures of shapes.

``sfumato.demo.data`` draws the procedural data set (one coloured circle,
square or triangle on a plain background, captioned
``a <colour> <shape> on a <colour> background``) and
``sfumato.demo.evaluate`` scores generated pictures against their captions
with fixed rules rather than a learned model. Submodules are imported on
use, so ``import sfumato.demo`` stays cheap.
"""
