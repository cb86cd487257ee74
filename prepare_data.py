"""Download and tokenize TinyStories (the original's command): python prepare_data.py --help"""
from tinystories.cli import prepare_main, run

if __name__ == "__main__":
    run(prepare_main)
