"""The Gradio chat UI: layout and event handlers only; all model work is in the engine."""
