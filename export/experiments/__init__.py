"""What the tutorials show, one command each: backbone comparison, few-shot accuracy, the
from-scratch baseline, the run report and Grad-CAM."""
