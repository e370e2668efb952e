"""Federated face recognition (FedFR): a shared generic backbone and a personalised model per client.

`split` writes the federated layout of a training set, `server` and `client` hold one round's two
sides, `simulation` runs every client in one process, `flower_app` runs the same objects on Flower.
"""
