"""Tables, analyses, plots and summaries of studies (exports, reports and the dashboard).

Everything here works on trials as plain dicts (``Trial.to_dict()``, the JSON the API sends),
so the same code serves a study read from the store and one read through a server.
"""
