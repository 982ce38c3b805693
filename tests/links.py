"""What the link tests plant: a secret outside the project, and a run that links its output
directory there (tests of docs/jobs.md's and docs/models.md's link rules)."""

SECRET = "the secret outside the project\n"

#: a job run that replaces its output directory by a link to ``sys.argv[1]``
REPLACE_OUTPUT_DIR = """\
import os, shutil, sys
shutil.rmtree(os.environ["WORKBENCH_OUTPUT_DIR"])
os.symlink(sys.argv[1], os.environ["WORKBENCH_OUTPUT_DIR"])
print("replaced")
"""
