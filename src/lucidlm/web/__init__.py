"""See and correct: the web page of ``lucidlm serve`` (``app``) and the self-contained HTML report
of ``lucidlm report`` (``report``). Both render the library's own values (``Prediction``,
``InterventionResult``, ``Explanation``, run metrics); neither computes an explanation itself.

The app needs FastAPI (``pip install lucidlm[web]``); the report needs nothing more than lucidlm.
"""
