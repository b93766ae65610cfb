"""Finished work is never lost: every image is journaled to disk as it arrives (`journal`), a stop
signal or a dead cluster still ends in a written partial report within seconds (`guard`), and a
run killed outright resumes from its journal when it is run again."""
