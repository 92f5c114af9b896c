"""Batch systems: SLURMCluster, PBSCluster, SGECluster, LSFCluster on one base
(JobQueueCluster, ``core.py``): a job-script header and three commands each."""

from .core import JobQueueCluster
from .job import Job
from .lsf import LSFCluster
from .pbs import PBSCluster
from .sge import SGECluster
from .slurm import SLURMCluster

__all__ = ["JobQueueCluster", "Job", "SLURMCluster", "PBSCluster", "SGECluster", "LSFCluster"]
