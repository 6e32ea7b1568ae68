"""Task runners behind the command-line front ends (training and evaluation per data set)."""
