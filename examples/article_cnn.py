"""The article's network, in the article's Keras idiom. Only the imports differ from Keras:

    import keras                          ->  import cnnlab as keras
    from keras.datasets import mnist      ->  from cnnlab.datasets import mnist_sample as mnist
    from keras.layers import ...          ->  from cnnlab.layers import ...
    from keras.models import Sequential   ->  from cnnlab.models import Sequential

Run: python examples/article_cnn.py   (EPOCHS=1 for a quick run)
"""

import os

import cnnlab as keras
from cnnlab.datasets import mnist_sample as mnist
from cnnlab.layers import Conv2D, Dense, Flatten, MaxPooling2D
from cnnlab.models import Sequential

batch_size = 128
num_classes = 10
epochs = int(os.environ.get("EPOCHS", 10))

# input image dimensions
img_x, img_y = 28, 28

# load the MNIST data set, which already splits into train and test sets for us
(x_train, y_train), (x_test, y_test) = mnist.load_data()

# reshape the data into a 4D tensor - (sample_number, x_img_size, y_img_size, num_channels)
x_train = x_train.reshape(x_train.shape[0], img_x, img_y, 1)
x_test = x_test.reshape(x_test.shape[0], img_x, img_y, 1)
input_shape = (img_x, img_y, 1)

# convert the data to the right type and scale it to [0, 1]
x_train = x_train.astype('float32')
x_test = x_test.astype('float32')
x_train /= 255
x_test /= 255
print('x_train shape:', x_train.shape)
print(x_train.shape[0], 'train samples')
print(x_test.shape[0], 'test samples')

# convert class vectors to binary class matrices - this is for use in the
# categorical_crossentropy loss below
y_train = keras.utils.to_categorical(y_train, num_classes)
y_test = keras.utils.to_categorical(y_test, num_classes)

model = Sequential()
model.add(Conv2D(32, kernel_size=(5, 5), strides=(1, 1),
                 activation='relu',
                 input_shape=input_shape))
model.add(MaxPooling2D(pool_size=(2, 2), strides=(2, 2)))
model.add(Conv2D(64, (5, 5), activation='relu'))
model.add(MaxPooling2D(pool_size=(2, 2)))
model.add(Flatten())
model.add(Dense(1000, activation='relu'))
model.add(Dense(num_classes, activation='softmax'))

model.compile(loss=keras.losses.categorical_crossentropy,
              optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
              metrics=['accuracy'])


class AccuracyHistory(keras.callbacks.Callback):
    def on_train_begin(self, logs={}):  # noqa: B006 (as the article wrote it)
        self.acc = []

    def on_epoch_end(self, batch, logs={}):  # noqa: B006
        self.acc.append(logs.get('accuracy'))


history = AccuracyHistory()

model.fit(x_train, y_train,
          batch_size=batch_size,
          epochs=epochs,
          verbose=1,
          validation_data=(x_test, y_test),
          callbacks=[history])
score = model.evaluate(x_test, y_test, verbose=0)
print('Test loss:', score[0])
print('Test accuracy:', score[1])
print('Accuracy per epoch:', history.acc)
