"""Serving: the Gradio web app (`app`), the live websocket server (`live`) and its client
(`client`). Gradio and websockets are imported only by the module that needs them."""
