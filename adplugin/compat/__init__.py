"""TensorFlow's names over adplugin, for programs written for TensorFlow.

`import adplugin.compat.v1 as tf` runs TensorFlow 1 programs (placeholders, variables in a
graph, `Session.run` with `feed_dict`, `tf.gradients`, `tf.train` optimizers) unchanged.
"""

from adplugin.compat import v1

__all__ = ["v1"]
