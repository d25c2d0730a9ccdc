"""Applications built on the public API, behind the command line.

* :mod:`.evaluate`: ``mmfinercam eval``, methods × metrics on the testbed or an annotated folder;
* :mod:`.bench`: ``mmfinercam bench``, speed against bare ``encode_image`` and the peers;
* :mod:`.web`: ``mmfinercam app``, the local web app;
* :mod:`.train_testbed` and :mod:`.select_depth`: train the shipped testbed model and choose
  its GEM settings.
"""
