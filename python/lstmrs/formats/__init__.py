"""File formats and foreign frameworks, read and written without building layers.

The writers (:mod:`.onnx_export`, :mod:`.safetensors_export`) take a layer or model as an
argument and read it through its public methods; the readers (:mod:`.torch_read`,
:mod:`.onnx_read`) turn a torch module or an ONNX node into a :class:`~.recipe.LayerRecipe`: the
constructor arguments and weights of a layer, which :func:`lstmrs.rnn.layer_from_recipe` builds.
So the layers call down into this package, and nothing here imports them.
onnx, onnxruntime and torch are optional: :mod:`.optional` imports them when first needed.
"""
