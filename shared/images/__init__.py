"""Real images in, labels out: the preprocessing each weight file expects, image files and
folders, the papers' training-time augmentation and test-time recipes, evaluation, and class
names. Framework-free (numpy and Pillow); a port is reached only through ``core/ports.py``.

One module per role: ``preprocess`` (the named pipelines, as data), ``files`` (decoding and
mode conversion), ``folders`` (ImageFolder, IDX and digits sources, lazy training data),
``augment`` (AlexNet's PCA colour noise and crops, VGG's scale jittering), ``testtime``
(centre, 10 crops, dense multi-scale, flips, rotations), ``evaluate`` (``rosetta eval``) and
``classes`` (ImageNet's names, ``--labels``, top-K).
"""
