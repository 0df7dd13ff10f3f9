"""webvse_world: the generated offline world (captioned images, a noisy Flickr corpus)
and a Flickr-compatible REST server over it. numpy + PIL + pyarrow; no torch, no Prefect.
"""
