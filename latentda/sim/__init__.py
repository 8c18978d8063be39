"""Embedded demo data: a Held-Suarez dry dynamical core (dinosaur) and pseudo-observation networks.

`heldsuarez` needs the optional ``sim`` extra (dinosaur + JAX) and imports it lazily;
`stations` (pseudo-observations) needs only numpy/pandas/xarray.
"""
