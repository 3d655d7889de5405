"""Serving: the OpenAI-compatible HTTP API, the web chat page, the feedback store and the data flywheel.

    chatforge serve --run runs/demo --stage sft --port 8000      # then open http://127.0.0.1:8000/
    chatforge feedback export --run runs/demo                    # feedback -> SFT + RM training data
"""
