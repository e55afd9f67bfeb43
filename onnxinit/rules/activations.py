"""(being written)"""
import numpy as np
from . import rule, signal
from ..moments import Moments
from scipy.stats import norm
@rule("Relu")
def relu(inputs, ctx):
    x = signal(inputs)
    s = np.sqrt(x.var); mu = x.mean
    a = np.where(s > 0, mu / np.where(s > 0, s, 1), np.inf*np.sign(mu))
    m1 = mu * norm.cdf(a) + s * norm.pdf(a)
    m2 = (mu**2 + s**2) * norm.cdf(a) + mu * s * norm.pdf(a)
    return [Moments(m1, m2 - m1**2)]
