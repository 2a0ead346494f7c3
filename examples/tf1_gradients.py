"""The `tf.gradients` notebook, run by adplugin with only its import changed.

f(a, b) = 2ab² + 3a²b at a = 2, b = 3: f = 72, df/da = 2b² + 6ab = 54, and d²f/da db = 4b + 6a
= 24, from untyped placeholders, `tf.gradients` applied twice and a `Session`. Only the import
line differs from TensorFlow 1's program: `import adplugin.compat.v1 as tf`.

    python examples/tf1_gradients.py [--a 2] [--b 3]
"""

from __future__ import annotations

from typing import Any

from absl import flags

import adplugin.compat.v1 as tf


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """The script's flags (defined only when run as a script, so importing it defines none)."""
    flags.DEFINE_float("a", 2.0, "value fed to a", flag_values=fv)
    flags.DEFINE_float("b", 3.0, "value fed to b", flag_values=fv)
    flags.DEFINE_bool("small", False, "accepted for uniformity (the program is small)",
                      flag_values=fv)


def run(a_value: float = 2.0, b_value: float = 3.0, emit: Any = print) -> dict[str, float]:
    """The TensorFlow 1 program; returns f, df/da and d²f/da db."""
    tf.reset_default_graph()

    # --- from here on: the TensorFlow 1 program, unchanged ----------------------------------
    a = tf.placeholder(tf.float32, name="a")
    b = tf.placeholder(tf.float32, name="b")
    f = 2*a*b**2 + 3*a**2*b

    df_da = tf.gradients(f, a)           # [2b² + 6ab]
    d2f_dadb = tf.gradients(df_da, b)    # [4b + 6a]

    with tf.Session() as sess:
        f_val, (df_da_val,), (d2f_val,) = sess.run([f, df_da, d2f_dadb],
                                                   feed_dict={a: a_value, b: b_value})
    emit("f =", f_val)
    emit("df/da =", df_da_val)
    emit("d2f/dadb =", d2f_val)
    return {"f": float(f_val), "df_da": float(df_da_val), "d2f_dadb": float(d2f_val)}


def main(argv: list[str]) -> None:
    del argv
    run(flags.FLAGS.a, flags.FLAGS.b)


if __name__ == "__main__":
    define_flags()
    from _cli import run_main

    run_main(main)
