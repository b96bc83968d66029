"""Serving: the Gradio web app (`app`), the live websocket server (`live`), its wire format
(`protocol`) and client (`client`), and notebook helpers (`colab`). Gradio and websockets are
imported only by the module that needs them."""
