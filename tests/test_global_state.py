"""cnnlab changes nothing global that the user owns: the plotting backend (no pyplot at all), Pillow's
pixel limit, the warnings filters, NumPy's print options. Checked in a fresh process that draws
every figure, writes a report and opens images."""

import subprocess
import sys
import textwrap


def test_drawing_and_reading_images_leave_global_state_alone(tmp_path):
    code = textwrap.dedent("""
        import sys, warnings
        import numpy as np
        import matplotlib
        from PIL import Image
        Image.MAX_IMAGE_PIXELS = 123_456_789            # the user's own settings
        warnings.simplefilter("default")
        np.set_printoptions(precision=3)

        def state():
            return (matplotlib.get_backend(), Image.MAX_IMAGE_PIXELS, list(warnings.filters),
                    np.get_printoptions())

        before = state()
        import cnnlab
        from cnnlab import preprocess, viz
        from cnnlab.viz.report import build_report
        model = cnnlab.zoo.get("lenet5")
        model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
        (x, y), _ = cnnlab.datasets.mnist_sample.load_data()
        x = cnnlab.datasets.as_model_input(x[:128])
        history = model.fit(x, y[:128], epochs=1, verbose=0, validation_split=0.25)
        viz.plot_feature_maps(model, x[0], "maps.png")
        viz.plot_filters(model, path="filters.png")
        viz.plot_history(history, "history.png")
        viz.plot_misclassified(model, x, y[:128], path="mistakes.png")
        build_report(model, x[:32], y[:32])
        Image.new("L", (40, 30), 200).save("digit.png")
        preprocess.open_image("digit.png")
        assert state() == before, (state(), before)
        assert "matplotlib.pyplot" not in sys.modules
        print("untouched")
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env={"MPLBACKEND": "svg", "PATH": "/usr/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "untouched" in result.stdout
