"""The README's small ResNet (the functional API, shortcuts and BatchNormalization), complete:
it loads the bundled digits, trains, and reports held-out accuracy.

BatchNormalization(momentum=0.9): its moving statistics, which evaluation and predictions use,
settle within a few dozen steps; at Keras' default of 0.99 this short run (171 steps) would leave
them mostly at their initial values, and cnnlab would say so when the model is evaluated.
"""

import os

from cnnlab import Input, Model, layers, utils
from cnnlab.datasets import mnist_sample

EPOCHS = int(os.environ.get("EPOCHS", 3))
utils.set_random_seed(int(os.environ.get("SEED", 1)))   # the same run, run after run

(x_train, y_train), (x_test, y_test) = mnist_sample.load_data()
x_train = x_train.reshape(-1, 28, 28, 1).astype("float32") / 255
x_test = x_test.reshape(-1, 28, 28, 1).astype("float32") / 255


def residual_block(x, filters, strides=1):
    y = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
    y = layers.ReLU()(layers.BatchNormalization(momentum=0.9)(y))
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization(momentum=0.9)(y)
    if strides != 1 or x.shape[-1] != filters:          # a 1x1 projection shortcut
        x = layers.BatchNormalization(momentum=0.9)(
            layers.Conv2D(filters, 1, strides=strides, use_bias=False)(x))
    return layers.ReLU()(layers.Add()([y, x]))


inputs = Input((28, 28, 1))
x = layers.Conv2D(16, 3, padding="same")(inputs)
x = layers.ReLU()(layers.BatchNormalization(momentum=0.9)(x))
x = residual_block(x, 16)
x = residual_block(x, 32, strides=2)
x = layers.GlobalAveragePooling2D(name="features")(x)
model = Model(inputs, layers.Dense(10, activation="softmax")(x), name="small_resnet")
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x_train, y_train, batch_size=128, epochs=EPOCHS, validation_split=0.1)
model.summary()                                 # with Keras' "Connected to" column
loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
print(f"Test accuracy: {accuracy:.4f}")

extractor = Model(model.input, model.get_layer("features").output)   # shares the weights
print("features:", extractor.predict(x_test[:5], verbose=0).shape)
