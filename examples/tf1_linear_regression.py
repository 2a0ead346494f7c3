"""The classic TensorFlow 1 linear regression, run by adplugin with only its import changed.

The program below is TensorFlow 1's well-known example as its readers wrote it: untyped
placeholders (`tf.placeholder("float")`, no shape: fed a scalar per sample and the whole data
set for the cost), two variables, `GradientDescentOptimizer(learning_rate).minimize(cost)` run
per sample with `feed_dict` inside a `Session`. Only the import line differs:
`import adplugin.compat.v1 as tf` instead of `import tensorflow as tf`.

    python examples/tf1_linear_regression.py [--epochs 1000] [--display_step 50] [--seed 0]
                                             [--small]
"""

from __future__ import annotations

from typing import Any

import numpy
from absl import flags

import adplugin.compat.v1 as tf

TRAIN_X = [3.3, 4.4, 5.5, 6.71, 6.93, 4.168, 9.779, 6.182, 7.59, 2.167, 7.042, 10.791, 5.313,
           7.997, 5.654, 9.27, 3.1]
TRAIN_Y = [1.7, 2.76, 2.09, 3.19, 1.694, 1.573, 3.366, 2.596, 2.53, 1.221, 2.827, 3.465, 1.65,
           2.904, 2.42, 2.94, 1.3]


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """The script's flags (defined only when run as a script, so importing it defines none)."""
    flags.DEFINE_integer("epochs", 1000, "training epochs (passes over the 17 samples)",
                         flag_values=fv)
    flags.DEFINE_integer("display_step", 50, "print the cost every this many epochs",
                         flag_values=fv)
    flags.DEFINE_float("learning_rate", 0.01, "gradient descent learning rate", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "seed of numpy.random (the initial W and b)", flag_values=fv)
    flags.DEFINE_bool("small", False, "a quick run: 20 epochs", flag_values=fv)


def run(training_epochs: int = 1000, display_step: int = 50, learning_rate: float = 0.01,
        seed: int = 0, emit: Any = print) -> dict[str, Any]:
    """The TensorFlow 1 program; returns the initial and trained W and b, and the costs."""
    numpy.random.seed(seed)
    rng = numpy.random
    tf.reset_default_graph()

    # --- from here on: the TensorFlow 1 program, unchanged ----------------------------------
    train_X = numpy.asarray(TRAIN_X)
    train_Y = numpy.asarray(TRAIN_Y)
    n_samples = train_X.shape[0]

    # tf Graph Input
    X = tf.placeholder("float")
    Y = tf.placeholder("float")

    # Set model weights
    W = tf.Variable(rng.randn(), name="weight")
    b = tf.Variable(rng.randn(), name="bias")

    # Construct a linear model
    pred = tf.add(tf.multiply(X, W), b)

    # Mean squared error
    cost = tf.reduce_sum(tf.pow(pred-Y, 2))/(2*n_samples)
    # Gradient descent
    optimizer = tf.train.GradientDescentOptimizer(learning_rate).minimize(cost)

    # Initialize the variables (i.e. assign their default value)
    init = tf.global_variables_initializer()

    # Start training
    with tf.Session() as sess:

        # Run the initializer
        sess.run(init)
        W0, b0 = sess.run([W, b])

        # Fit all training data
        history = []
        for epoch in range(training_epochs):
            for (x, y) in zip(train_X, train_Y):
                sess.run(optimizer, feed_dict={X: x, Y: y})

            # Display logs per epoch step
            if (epoch+1) % display_step == 0:
                c = sess.run(cost, feed_dict={X: train_X, Y: train_Y})
                history.append(float(c))
                emit("Epoch:", '%04d' % (epoch+1), "cost=", "{:.9f}".format(c),  # noqa: UP031,UP032
                     "W=", sess.run(W), "b=", sess.run(b))

        emit("Optimization Finished!")
        training_cost = sess.run(cost, feed_dict={X: train_X, Y: train_Y})
        emit("Training cost=", training_cost, "W=", sess.run(W), "b=", sess.run(b), '\n')
        return {"W0": float(W0), "b0": float(b0), "W": float(sess.run(W)),
                "b": float(sess.run(b)), "cost": float(training_cost), "history": history}


def main(argv: list[str]) -> None:
    del argv
    F = flags.FLAGS
    epochs = 20 if F.small else F.epochs
    run(epochs, min(F.display_step, epochs), F.learning_rate, F.seed)


if __name__ == "__main__":
    define_flags()
    from _cli import run_main

    run_main(main)
