"""The data stage: from files on disk to batches, in the order the data flows.

`pixels` (the decode budget and pixel conversions), `dicom` and `images` (decoding a film to
the model's input), `scan` (walking a folder of films), `folders` (finding the data, its
classes, patients and subtypes), `split` (the patient-grouped train/validation split),
`pipeline` (the `tf.data` input pipeline and its augmentation) and `filmstats` (framing and
exposure statistics of films). Only `pipeline` needs TensorFlow.
"""
